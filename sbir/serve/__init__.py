"""``sbir serve``'s web application: draw or drop a sketch in a page and see the gallery's best photos and why
they match (:func:`sbir.serve.app.create_app`, FastAPI)."""
