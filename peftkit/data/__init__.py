"""Data: where a data set lives (registry), how its files are read (readers, conll), demo sets."""
