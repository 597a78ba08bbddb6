"""Offline preparation: HCP DWI -> DTI pairs, generic volumes, and the DTI brain phantom."""
