"""The deployment configurations. ``local.toml`` and ``production.toml`` ship in the wheel as
``scanstream.config``: ``scanstream init`` copies one of them into a new working folder, so an
installed scanstream runs its demo without a checkout of the repository."""
