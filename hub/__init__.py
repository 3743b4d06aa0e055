"""The media plane and the domain: sites, rooms, streams, the SFU, live state."""
