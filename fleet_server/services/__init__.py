"""Fleet-server services: storage-backed operations composed by the API, ingest and jobs."""
