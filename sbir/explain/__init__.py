"""Explanations of sketch-photo matches: token correspondences and sketch-to-photo synthesis
(``correspondence``), their figures (``figures``), and the explain stage's folder (``retrievals``)."""
