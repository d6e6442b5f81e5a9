"""Job drivers over the readers: convert, build-binary, and the engines that run their scenes."""
