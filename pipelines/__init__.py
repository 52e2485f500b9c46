"""KFP pipelines: the Keye recipe wired from components, plus compile/submit/run-local helpers."""
