"""FlexCal: flexible uncertainty calibration for MLIPs."""
