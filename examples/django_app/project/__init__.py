"""The Django project of the example shop: settings, routes and the WSGI entry point."""
