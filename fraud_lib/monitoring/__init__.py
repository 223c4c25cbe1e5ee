"""Monitoring: drift, realized performance and alerts."""
