"""Teacher backends: transformers, llama.cpp (GGUF), and OpenAI-compatible HTTP."""

from .base import TEACHERS, GenRequest, SamplingParams, Teacher, TeacherConfig, make_teacher, sample_seed

__all__ = ["TEACHERS", "GenRequest", "SamplingParams", "Teacher", "TeacherConfig", "make_teacher", "sample_seed"]
