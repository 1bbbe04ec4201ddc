"""responder: an RFC 3834 autoresponder that answers only verified human senders."""

__version__ = "0.1.0"
