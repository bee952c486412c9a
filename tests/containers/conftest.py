from tests.containers.helpers import image, tb

__all__ = ["image", "tb"]
