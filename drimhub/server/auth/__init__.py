"""OAuth2 / SMART on FHIR: the built-in authorization server and the resource protection."""
