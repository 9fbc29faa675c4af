-- One row per run of `scanstream run` that wrote here, named by the embedded state that made it
-- (state_id: a random id given to a state file when it is created; run: its run number).
-- A run compares its state with these rows before it writes, and refuses to start when the two
-- disagree: a state file from another database, a state restored from an older copy, or a new
-- state against a database that already holds another state's outcomes.
CREATE TABLE IF NOT EXISTS state_runs
(
    state_id String,
    run      UInt64,
    input    String,
    ts       DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (state_id, run);
