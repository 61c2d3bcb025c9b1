"""Turn a chest X-ray release (CheXpert Plus, MIMIC-CXR-JPG, IU X-ray), as shipped, into a LLaVA-1.5 VQA dataset."""
