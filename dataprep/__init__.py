"""Turn the CheXpert Plus release into a LLaVA-1.5 VQA dataset."""
