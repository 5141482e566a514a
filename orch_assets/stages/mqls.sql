CREATE OR REPLACE VIEW stages.mqls AS SELECT * FROM contacts_in_stage('mql')
