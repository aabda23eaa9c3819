"""Runnable examples. A package so that run configs can name ``examples.classifier.BlobClassifier`` when raylit
runs from the repository root (the CLI puts the current directory on ``sys.path``)."""
