"""Analyses and tools on top of an encoder: t-SNE, saliency maps, and embedding search over image folders."""
