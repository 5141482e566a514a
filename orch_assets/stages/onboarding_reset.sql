DELETE FROM stages.onboarding
