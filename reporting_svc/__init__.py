"""ReportingService: top profiles and totals, read from the statistics the aggregator keeps."""
