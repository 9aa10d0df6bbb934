"""Model converters: Keras/SavedModel -> TFLite, SavedModel, ONNX; ONNX -> TFLite, OpenVINO IR.

Each module imports its converter inside its functions, so importing this
package stays cheap; the steps in ``edgefleet.steps.convert`` drive them.
"""
