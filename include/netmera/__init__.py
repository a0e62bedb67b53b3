"""Netmera: the REST client and the at-most-once campaign send to a published membership."""
