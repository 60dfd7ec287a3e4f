"""The Azure Custom Vision compatible API's logic: its domains, projects, tags, images,
iterations and predictions on top of this service's datasets, jobs and model versions."""
