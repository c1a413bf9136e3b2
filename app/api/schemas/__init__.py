"""API schemas: request bodies (``bodies``) and response models, one module per resource.

Request bodies are re-exported here; routes import response models from their resource's module.
"""

from app.api.schemas.bodies import (ErasureCreate, ExtendBody, IdentityDecision, IngestBody, KeyCreate, ModelRegister,
                                    PolicyBody, PredictBody, Recipient, RecipientsBody, RollbackBody, SampleIn)

__all__ = ["ErasureCreate", "ExtendBody", "IdentityDecision", "IngestBody", "KeyCreate", "ModelRegister", "PolicyBody",
           "PredictBody", "Recipient", "RecipientsBody", "RollbackBody", "SampleIn"]
