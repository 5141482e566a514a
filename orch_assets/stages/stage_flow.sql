-- Who entered and who left a stage in this run: the records in it now (the temp table
-- members_now) against those it held at its last materialization (stages.stage_members), which
-- are then replaced by today's. A record that came and went between two runs is in neither.
-- Members are kept as 64-bit hashes of their ids: smaller and faster to compare than the ids,
-- and a collision among a stage's records is vanishingly unlikely.
CREATE TABLE IF NOT EXISTS stages.stage_members (stage VARCHAR NOT NULL, member UBIGINT NOT NULL);
CREATE OR REPLACE TEMP TABLE stage_flow AS
WITH before AS (SELECT member FROM stages.stage_members WHERE stage = $stage)
SELECT (SELECT count(*) FROM members_now ANTI JOIN before USING (member)) AS entered_this_run,
       (SELECT count(*) FROM before ANTI JOIN members_now USING (member)) AS left_this_run;
DELETE FROM stages.stage_members WHERE stage = $stage;
INSERT INTO stages.stage_members SELECT $stage, member FROM members_now;
