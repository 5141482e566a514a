CREATE OR REPLACE VIEW stages.sqls AS SELECT * FROM contacts_in_stage('sql')
