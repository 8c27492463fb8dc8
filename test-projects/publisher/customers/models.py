"""The customers service's data: what other services want to know about."""

import uuid

from django.contrib.auth.models import User
from django.db import models

import pubsubpull

# Comms reacts to new users; the password hash is never published.
pubsubpull.register(User)


@pubsubpull.register
class Country(models.Model):
    code = models.CharField(max_length=2, primary_key=True)
    name = models.CharField(max_length=100)

    class Meta:
        verbose_name_plural = "countries"

    def __str__(self):
        return self.name


@pubsubpull.register(exclude=["notes"])
class Customer(models.Model):
    name = models.CharField(max_length=200)
    email = models.EmailField(blank=True)
    country = models.ForeignKey(Country, null=True, blank=True, on_delete=models.SET_NULL)
    newsletter = models.BooleanField(default=False)
    notes = models.TextField(blank=True, help_text="Internal; never published.")
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    def __str__(self):
        return self.name


@pubsubpull.register
class Address(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="addresses")
    line1 = models.CharField(max_length=200)
    city = models.CharField(max_length=100)
    postcode = models.CharField(max_length=20, blank=True)

    class Meta:
        verbose_name_plural = "addresses"

    def __str__(self):
        return f"{self.line1}, {self.city}"


@pubsubpull.register(fields=["customer", "amount", "currency"])
class Contract(models.Model):
    """A UUID primary key, and only some fields published."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="contracts")
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3, default="EUR")
    discount_reason = models.TextField(blank=True)

    def __str__(self):
        return f"{self.amount} {self.currency}"


class InternalNote(models.Model):
    """Not published: its changes must never reach the change log."""

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE)
    text = models.TextField()

    def __str__(self):
        return self.text[:50]
