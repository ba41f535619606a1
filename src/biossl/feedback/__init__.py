"""Random (RF/FA), updated random (URF) and sign feedback: layers, Functions, converter."""
from biossl.feedback.convert import FEEDBACK_MODES, check_mode, to_feedback
from biossl.feedback.functions import FeedbackConvFn, FeedbackLinearFn, feedback_conv, feedback_linear
from biossl.feedback.layers import (LAYER_MODES, FeedbackConv, FeedbackLayer, FeedbackLinear,
                                    feedback_layers, mirrored_updates, random_feedback,
                                    weight_transport)

__all__ = ["FEEDBACK_MODES", "LAYER_MODES", "check_mode", "to_feedback", "FeedbackConvFn",
           "FeedbackLinearFn", "feedback_conv", "feedback_linear", "FeedbackConv", "FeedbackLayer",
           "FeedbackLinear", "feedback_layers", "mirrored_updates", "random_feedback",
           "weight_transport"]
