"""The input normalisation every image encoder is fed (training views, evaluation, embedding): ImageNet's mean and
std per RGB channel. An encoder whose weights expect another one converts (:class:`convirt.models.image.ImageEncoder`).
"""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
