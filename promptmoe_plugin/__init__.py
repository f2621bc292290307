"""PromptMoE refinement and SmartSAM disambiguation on a shared SAM engine.

This package holds the algorithms and the SAM engine; it never imports Label Studio.
"""

__version__ = "0.1.0"
