"""cwhook: Plex, Jellyfin and Emby playback webhooks scrobbled to Trakt."""

__version__ = "0.1.0"
