-- Marks: where a worker's sweep stopped (quote retention's cursor), so a restart or a new
-- leader goes on from there instead of walking the history again. Progress, not state: a mark
-- lost only repeats work. Not copied by backups.
CREATE TABLE marks (
    name   text COLLATE "C" PRIMARY KEY,
    value  text NOT NULL
);
