"""Clients of the external systems, one class per system, each built from a `ConnectionInfo`
and owning its session, timeouts, pacing, retries and error messages: `MixpanelClient`,
`AmplitudeClient`, `NetmeraClient` over the shared HTTP mechanics (`http`, whose VendorError
they raise), and SQLAlchemy engines for databases (`database`)."""
