"""Saliency maps: which pixels of an image a prediction rests on (`alexnet explain`).

- `cam`: Grad-CAM and Grad-CAM++ on a convolution of a torch model, averaged over the run's test-time views;
- `occlusion`: the drop in a class's probability when a grey patch hides part of the image, through any
  `probabilities(uint8 images)` function, so the same code serves torch and onnxruntime;
- `maps`: a map on the model's input grid brought back onto the image file (the inverse of `alexnet predict`'s
  resize and centre crop), normalised to [0, 1];
- `overlay`: the map blended on the image, with a colour bar and the class in the title, as a PNG;
- `sanity`: checks that a map explains the model (model randomisation, pointing game, deletion and insertion),
  and `synthetic`: a localisation task whose answer is known, to run them on.

Only `cam`, `sanity` and `synthetic` import torch: an exported model explained by occlusion on onnxruntime never
loads it.
(The package is not named `explain`: `alexnet.explain` is the API function, and a subpackage of that name would
replace it on the `alexnet` module as soon as it was imported.)
"""
