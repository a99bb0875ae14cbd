"""a_stages."""
