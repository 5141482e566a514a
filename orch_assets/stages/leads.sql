CREATE OR REPLACE VIEW stages.leads AS SELECT * FROM contacts_in_stage('lead')
