"""Model-side preparation (-> core): input and calibration sets, PyTorch references, ONNX export, ONNX
test-case files."""
