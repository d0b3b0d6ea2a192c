"""`alexnet serve`: a trained classifier over HTTP, with a page to try it.

app.py holds the routes (`create_app`), batching.py the dynamic batcher, explainer.py the work of /explain,
errors.py the client's 4xx answers, page/index.html the one page.
Nothing is imported here, so `import alexnet.serve` costs nothing until the service is built.
"""
