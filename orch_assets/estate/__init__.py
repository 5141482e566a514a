"""The automation-estate audit: imported automations ranked keep / migrate / retire."""
