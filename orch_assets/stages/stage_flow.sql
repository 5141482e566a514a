-- Who entered and who left a stage in this run: the records in it now (the temp table
-- members_now) against those it held at its last materialization (stages.stage_members), which
-- then become today's. A record that came and went between two runs is in neither.
-- Members are kept as 64-bit hashes of their ids: smaller and faster to compare than the ids,
-- and a collision among a stage's records is vanishingly unlikely. Only who entered and who
-- left is written: rewriting every member (585,000 leads at 1M contacts) cost each run the
-- delete, the insert and their checkpoint.
CREATE TABLE IF NOT EXISTS stages.stage_members (stage VARCHAR NOT NULL, member UBIGINT NOT NULL);
CREATE OR REPLACE TEMP TABLE members_before AS
SELECT member FROM stages.stage_members WHERE stage = $stage;
CREATE OR REPLACE TEMP TABLE members_entered AS
SELECT member FROM members_now ANTI JOIN members_before USING (member);
CREATE OR REPLACE TEMP TABLE members_left AS
SELECT member FROM members_before ANTI JOIN members_now USING (member);
CREATE OR REPLACE TEMP TABLE stage_flow AS
SELECT (SELECT count(*) FROM members_entered) AS entered_this_run,
       (SELECT count(*) FROM members_left) AS left_this_run;
DELETE FROM stages.stage_members
WHERE stage = $stage AND member IN (SELECT member FROM members_left);
INSERT INTO stages.stage_members SELECT $stage, member FROM members_entered;
DROP TABLE members_before;
DROP TABLE members_entered;
DROP TABLE members_left;
