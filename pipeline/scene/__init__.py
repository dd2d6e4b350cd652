"""Scene models behind the indoor vote and the photo embeddings (the classify stage).

``vote`` is pure numpy (the filters and tests use it without torch) and ``spec`` names a model
without torch; ``backbone`` (loading) and ``infer`` (preprocessing, batched inference) hold the
torch side and ``onnx`` the ONNX Runtime one, imported only by the code that runs a model, so
``crossview filter`` and the other stages never pay for importing torch.
"""
