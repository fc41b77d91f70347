"""The shard format: WebDataset tars ``{train,val,test}/{sketch,photo}-NNNNNN.tar`` and ``index.json``
(``reader``), written byte-reproducibly (``writer``) from a raw dataset with a zero-shot split (``build``)."""
