-- Who entered and who left a stage in this run: the records in it now (the temp table
-- members_now) against those it held at its last materialization (stages.stage_members), which
-- are then replaced by today's. A record that came and went between two runs is in neither.
CREATE TABLE IF NOT EXISTS stages.stage_members (stage VARCHAR NOT NULL, member_id VARCHAR NOT NULL);
CREATE OR REPLACE TEMP TABLE stage_flow AS
WITH before AS (SELECT member_id FROM stages.stage_members WHERE stage = $stage)
SELECT (SELECT count(*) FROM members_now ANTI JOIN before USING (member_id)) AS entered_this_run,
       (SELECT count(*) FROM before ANTI JOIN members_now USING (member_id)) AS left_this_run;
DELETE FROM stages.stage_members WHERE stage = $stage;
INSERT INTO stages.stage_members SELECT $stage, member_id FROM members_now;
