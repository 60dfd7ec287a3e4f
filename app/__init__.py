"""smallvision: train and serve image classifiers from small labeled datasets."""
