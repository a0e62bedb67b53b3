"""Campaign: Send Message to a published membership (`message`), at most once per user and
key (`send`, through the Netmera REST client)."""
