"""The ClickHouse DDL, applied in file-name order by ``scanstream.sinks.clickhouse``.

Kept in config/ beside the other deployment files; a package only so that the build ships it
inside the one installed name, as ``scanstream.sinks.ddl``.
"""
