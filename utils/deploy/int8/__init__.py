"""INT8: the calibration images, each runtime's quantization (ONNX Runtime's, NNCF for OpenVINO, PT2E for
LiteRT and ExecuTorch) and the --max-drop bound they share."""
