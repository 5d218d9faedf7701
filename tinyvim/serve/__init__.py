"""Serving TinyViM with Triton Inference Server: the model repository writer
(`export --fmt triton`), the `tritonserver` launcher (`serve`) and the load client
(`serve-bench`). tritonclient and the server are optional (`pip install 'tinyvim[serve]'`)
and imported only where they are used."""
