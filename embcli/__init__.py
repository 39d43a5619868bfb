"""embcli: read and edit the embedding tables of saved Keras and TensorFlow models."""

__version__ = "0.1.0"
