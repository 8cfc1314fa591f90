"""MediaPipe's BlazePose and hand networks (Apache-2.0), read from their ``.tflite`` files and run in PyTorch.

* :mod:`~fastmetro.mediapipe.assets`: the ``.tflite`` files, fetched from npm at a pinned version
  into fastmetro's cache (``fastmetro assets fetch``), checked against pinned hashes.
* :mod:`~fastmetro.mediapipe.graph`: any of these networks as a ``torch.nn.Module`` (fp16 and
  sparse weights densified; batched; CPU or CUDA), with its intermediate feature maps reachable.
* :mod:`~fastmetro.mediapipe.detection`: anchors, box decoding and weighted non-maximum suppression.
* :mod:`~fastmetro.mediapipe.people`: people (and hands) found in a photo: detector, region of
  interest from the alignment keypoints, landmark network.

This area sits at the model layer: it imports only the base modules and itself.
"""
