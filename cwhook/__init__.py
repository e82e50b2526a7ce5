"""cwhook: Plex, Jellyfin, Emby and Tautulli playback webhooks scrobbled to Trakt."""

__version__ = "0.2.0"
